"""The top of the tree: the explorer widget, the command line, teaching helpers and ComfyUI comparisons."""
