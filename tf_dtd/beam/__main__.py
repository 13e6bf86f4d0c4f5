"""``python -m tf_dtd.beam --input PATTERN --output DIR [Beam pipeline options]``."""

import sys

from tf_dtd.beam.pipeline import main

if __name__ == "__main__":
    sys.exit(main())
