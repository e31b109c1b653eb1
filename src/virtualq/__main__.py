from virtualq.cli import main

raise SystemExit(main())
