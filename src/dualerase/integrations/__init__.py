"""What connects a run to the outside: the model card and the Hub, trackers, shared folders."""
