"""Training, evaluation, prediction and calibration: the jobs the command line runs."""
