/* The CRI sandbox image's process for the pod tests: holds the pod's namespaces and does
 * nothing, like Kubernetes' pause. SIGINT/SIGTERM end it (it is PID 1 of its pid namespace:
 * without handlers it would ignore them), SIGCHLD reaps orphans of a shared pid namespace.
 * Built static by the tests (gcc -static) and packaged with `rootfs-builder oci-image
 * --add-file`. */
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>
static void quit(int sig) { (void)sig; _exit(0); }
static void reap(int sig) { (void)sig; while (waitpid(-1, 0, WNOHANG) > 0) {} }
int main(void) {
    signal(SIGINT, quit);
    signal(SIGTERM, quit);
    signal(SIGCHLD, reap);
    for (;;) pause();
}
