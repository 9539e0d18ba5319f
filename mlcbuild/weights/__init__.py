"""Weight files: reading HF checkpoints tensor by tensor, and MLC's tensor cache (write + read)."""
