"""Run a reproduced study and write its results page: `python scripts/reproduce.py <study> [--help]`.

The studies: course_mnist, even_odd_entropy, mnist_fnn_lenet, cifar10_linear, emnist_entropy_losses, label_noise_mnist
(scripts/study_pages/studies.py); the pages: docs/results/.
"""

import sys

from study_pages.reproduce import main

if __name__ == "__main__":  # the figure workers start by importing this file: they must not run the study
    sys.exit(main())
