"""One module per published system, assembled from backbones, layers and the language models."""
