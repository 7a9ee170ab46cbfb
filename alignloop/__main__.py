from alignloop.cli.main import main

raise SystemExit(main())
