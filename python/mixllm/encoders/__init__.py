"""Sentence encoders: ONNX models, their files and how they are fetched or built."""
