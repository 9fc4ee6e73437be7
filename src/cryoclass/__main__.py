from cryoclass.cli import main

raise SystemExit(main())
