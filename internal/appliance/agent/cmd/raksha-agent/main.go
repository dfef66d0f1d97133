// Command raksha-agent runs inside the file-restore appliance (see package
// agent); scripts/build-appliance.sh puts it in the appliance's initramfs.
package main

import "github.com/raksha-backup/raksha/internal/appliance/agent"

func main() { agent.Main() }
