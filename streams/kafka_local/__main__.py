"""``python -m streams.kafka_local``: see :mod:`streams.kafka_local.cli`."""

import sys

from .cli import main

sys.exit(main())
