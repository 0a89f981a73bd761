"""Fine-tuning pipeline (issue 11): data, transforms, models, loop, export behind ``scripts/train.py``.

See docs/training.md. Importing this package is cheap; torch loads inside the modules that need it.
"""
