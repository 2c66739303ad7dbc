"""Semi-supervised learning: pseudo-label filters, quality report, augmentation, balanced
batches, and the generate-pseudo-labels / train-student-SSL stage implementations."""
