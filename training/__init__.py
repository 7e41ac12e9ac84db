"""The shapes model: a synthetic data set, the training stages that make an SD1.5-shaped
model of it on a CPU, the evaluator that reads its images, and the slimmed tier.

``python -m training --help``; docs/training.md says what each part does.
"""
