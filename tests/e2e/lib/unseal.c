/* unseal DIR: what a guest's root would try against a sealed directory of ours
 * (docs/security.md#sealed): clear its immutable flag through virtiofsd
 * (FS_IOC_SETFLAGS). Exit 0 only if the flag is cleared; the e2e expects a
 * refusal. Built static on the host and sent to the guest over ssh. */
#include <fcntl.h>
#include <linux/fs.h>
#include <stdio.h>
#include <string.h>
#include <errno.h>
#include <sys/ioctl.h>

int main(int argc, char **argv) {
    int fd, flags;
    if (argc != 2) return 2;
    fd = open(argv[1], O_RDONLY | O_DIRECTORY);
    if (fd < 0) { printf("open: %s\n", strerror(errno)); return 1; }
    if (ioctl(fd, FS_IOC_GETFLAGS, &flags) != 0) { printf("getflags: %s\n", strerror(errno)); return 1; }
    flags &= ~FS_IMMUTABLE_FL;
    if (ioctl(fd, FS_IOC_SETFLAGS, &flags) != 0) { printf("setflags: %s\n", strerror(errno)); return 1; }
    if (ioctl(fd, FS_IOC_GETFLAGS, &flags) != 0 || (flags & FS_IMMUTABLE_FL)) { printf("still sealed\n"); return 1; }
    printf("unsealed\n");
    return 0;
}
