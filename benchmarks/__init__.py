"""Speed measurements of the pipeline's steps, side by side with a PyTorch reference."""
