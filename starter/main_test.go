package main

import "os"

// cliMainEnv makes the test binary raksha itself (run with its arguments):
// a libvirt disk backup run in the test process starts its freeze watchdog
// by running its own executable, the test binary, with "watchdog …"; and a
// test that must SIGKILL a backup runs the test binary as raksha in a
// process of its own.
const cliMainEnv = "RAKSHA_CLI_TEST_MAIN"

func init() {
	if os.Getenv(cliMainEnv) != "" {
		main()
		os.Exit(0)
	}
	// Every re-execution of this binary from here on is raksha's main.
	os.Setenv(cliMainEnv, "1")
}
