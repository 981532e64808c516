from zfcore.cli.main import main

raise SystemExit(main())
