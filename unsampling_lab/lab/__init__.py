"""The user-facing layer (CLI, widgets, teaching helpers, image files); the core never imports it."""
