from __future__ import annotations

from ollana.cli import main

main()
