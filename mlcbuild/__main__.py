from mlcbuild.cli.main import main

raise SystemExit(main())
