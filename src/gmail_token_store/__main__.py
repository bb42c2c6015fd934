"""`python -m gmail_token_store`: the same as the gmail-token-store command."""

import sys

from ._cli import main

sys.exit(main())
