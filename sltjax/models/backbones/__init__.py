"""Spatial and spatio-temporal visual backbones: frames [batch, T, H, W, 3] -> [batch, T', C]."""
