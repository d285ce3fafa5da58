from metadist.cli import main

raise SystemExit(main())
