"""Training: the pure pmapped step (`step`), losses, optimiser, evaluation, the loop that runs one
stage (`loop`) and the two-stage schedule that decides where each stage starts (`stages`)."""
