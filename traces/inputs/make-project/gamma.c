#include <stdio.h>
#include <string.h>
int gamma_count(const char *s) { int n = 0; for (; *s; s++) n += (*s == 'g'); return n; }
void gamma_print(const char *s) { printf("%s: %d\n", s, gamma_count(s)); }
