"""ComfyUI-facing code: tensors in and out, the node schema, progress, interrupts, batches."""
