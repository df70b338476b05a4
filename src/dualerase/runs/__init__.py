"""One erase-class run from start to end: the workload, erasure with checkpoints, evaluation,
one job or several seeds, and sample-grid."""
