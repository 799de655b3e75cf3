"""Example specs: a toy quadratic, a scikit-learn digits demo (also as a LightningModule), the
MNIST benchmark, and text classification with a Hugging Face Trainer."""
