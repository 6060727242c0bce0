"""Weight conversion from Hugging Face checkpoints into sltjax models, and vocabulary trimming."""
