/* The floor of the generator's output (bench/run.sh, issue 19): the system calls its layout
 * needs for N VMs and nothing else. No config to read, no text to make, no loader (built
 * -static). The layout is the contract of tests/generator (the golden trees): the two template
 * drop-ins, then for each VM two instance directories, the first one's drop-in written in one
 * write and the second's a hard link to it (what the generator does since issue 19).
 *
 * usage: gen-floor OUT_DIR N */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char text[1116]; /* the longest drop-in (virtiofsd's template); an instance's is ~480 */

static int write_new(int dir, const char *rel, size_t len) {
	int fd = openat(dir, rel, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
	if (fd < 0 || write(fd, text, len) != (ssize_t)len)
		return -1;
	return close(fd);
}

int main(int argc, char **argv) {
	if (argc != 3)
		return 2;
	int n = atoi(argv[2]);
	int out = open(argv[1], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (out < 0)
		return 1;
	memset(text, '#', sizeof text);
	const char *templates[2] = {"microvm-virtiofsd@", "microvm@"};
	const size_t sizes[2] = {1116, 360};
	char dir[256], rel[320], first[320];
	for (int t = 0; t < 2; t++) {
		snprintf(dir, sizeof dir, "%s.service.d", templates[t]);
		snprintf(rel, sizeof rel, "%s/50-microvm-workspaces.conf", dir);
		if (mkdirat(out, dir, 0777) < 0 || write_new(out, rel, sizes[t]) < 0)
			return 1;
	}
	for (int v = 0; v < n; v++) {
		for (int t = 0; t < 2; t++) {
			snprintf(dir, sizeof dir, "%svm%d.service.d", templates[t], v);
			snprintf(rel, sizeof rel, "%s/50-microvm-workspaces-mounts.conf", dir);
			if (mkdirat(out, dir, 0777) < 0)
				return 1;
			if (t == 0) {
				if (write_new(out, rel, 484) < 0)
					return 1;
				strcpy(first, rel);
			} else if (linkat(out, first, out, rel, 0) < 0) {
				return 1;
			}
		}
	}
	return 0;
}
