"""Process lifecycle: the batch pipeline, the child's loop, the parent supervisor."""
