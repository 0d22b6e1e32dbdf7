// Command hello is the seeded test image's only file: it says hello and waits to be stopped.
// It exits 0 on SIGTERM at once, so pods running it stop without the 30 s grace period.
package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	fmt.Println("hello from the ECR registry emulator")
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	<-stop
}
