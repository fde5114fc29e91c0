#include <stdio.h>
#include <string.h>
int beta_count(const char *s) { int n = 0; for (; *s; s++) n += (*s == 'b'); return n; }
void beta_print(const char *s) { printf("%s: %d\n", s, beta_count(s)); }
