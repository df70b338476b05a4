"""What connects a run to the outside: the model card and the Hub, experiment trackers, claims of shared folders."""
