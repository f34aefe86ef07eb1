"""Start the style-adapter studio: ``python app.py`` (see ``python app.py --help``)."""

import sys

from studio.app.server import main

if __name__ == "__main__":
    sys.exit(main())
