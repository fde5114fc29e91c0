#include <stdio.h>
#include <string.h>
int alpha_count(const char *s) { int n = 0; for (; *s; s++) n += (*s == 'a'); return n; }
void alpha_print(const char *s) { printf("%s: %d\n", s, alpha_count(s)); }
