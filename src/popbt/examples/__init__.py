"""Example specs: a toy quadratic, a scikit-learn digits demo and the MNIST benchmark."""
