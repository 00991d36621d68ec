"""Attribute unlearning: remove an attribute (glasses, sex, age group) from a model's features."""
