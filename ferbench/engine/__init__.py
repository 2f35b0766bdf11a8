"""Training, evaluation and checkpoints. Reads arrays and models handed to it; writes no reports."""
