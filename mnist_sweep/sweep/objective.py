"""What a sweep optimizes: one metric, in one direction, named once."""

METRIC = "val_accuracy"  # the test set stays out of the search
DIRECTION = "maximize"
