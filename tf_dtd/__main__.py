"""``python -m tf_dtd ...`` runs the ``tf-dtd`` command."""

import sys

from tf_dtd.app.cli import main

sys.exit(main())
