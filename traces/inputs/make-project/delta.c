#include <stdio.h>
#include <string.h>
int delta_count(const char *s) { int n = 0; for (; *s; s++) n += (*s == 'd'); return n; }
void delta_print(const char *s) { printf("%s: %d\n", s, delta_count(s)); }
