"""What a person reads and looks at: sample grids, sample files, the terminal summary, loss and gradient figures."""
