"""Records, readers, templates and batching shared by every stage."""
