from __future__ import annotations

from ollana.cli.main import main

main()
