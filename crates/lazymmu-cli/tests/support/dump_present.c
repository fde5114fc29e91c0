/*
 * Preloaded into a recorded program, this writes the pages the kernel has
 * present in the program's address space when it exits, from
 * /proc/self/pagemap, one hexadecimal address per line, to $DUMP_TO. It
 * then calls munmap(0x20000, 4096), which unmaps nothing and marks in the
 * trace the moment the dump was complete.
 *
 * Its buffers are static and touched in the constructor, so the dump
 * itself adds no page to the address space.
 */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static char maps[1 << 20];
static uint64_t entries[1 << 16];
static char out[1 << 22];

__attribute__((constructor)) static void touch_buffers(void)
{
	memset(maps, 0, sizeof maps);
	memset(entries, 0, sizeof entries);
	memset(out, 0, sizeof out);
}

__attribute__((destructor)) static void dump_present(void)
{
	const char *dest = getenv("DUMP_TO");
	if (!dest)
		return;
	int fd = open("/proc/self/maps", O_RDONLY);
	size_t n = 0;
	ssize_t r;
	while (fd >= 0 && (r = read(fd, maps + n, sizeof maps - 1 - n)) > 0)
		n += (size_t)r;
	close(fd);
	maps[n] = 0;
	int pagemap = open("/proc/self/pagemap", O_RDONLY);
	size_t len = 0;
	for (char *line = maps; *line;) {
		char *end = strchr(line, '\n');
		if (!end)
			break;
		unsigned long start, stop;
		if (sscanf(line, "%lx-%lx", &start, &stop) == 2 && stop <= 0x800000000000UL) {
			const unsigned long chunk = 4096UL * (sizeof entries / sizeof entries[0]);
			for (unsigned long a = start; a < stop; a += chunk) {
				unsigned long limit = a + chunk < stop ? a + chunk : stop;
				size_t pages = (limit - a) / 4096;
				if (pread(pagemap, entries, pages * 8, (off_t)(a / 4096 * 8)) < 0)
					break;
				for (size_t i = 0; i < pages; i++)
					if (entries[i] >> 63 && len + 32 < sizeof out)
						len += (size_t)snprintf(out + len, sizeof out - len, "%lx\n",
									a + i * 4096);
			}
		}
		line = end + 1;
	}
	close(pagemap);
	int o = open(dest, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (o >= 0) {
		if (write(o, out, len) < 0)
			perror("dump_present");
		close(o);
	}
	munmap((void *)0x20000, 4096);
}
