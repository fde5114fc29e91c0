#include <stdio.h>
#include <stdlib.h>
#include <string.h>
struct node { struct node *next; char name[32]; };
static struct node *push(struct node *head, const char *name) {
  struct node *n = malloc(sizeof *n);
  strncpy(n->name, name, sizeof n->name - 1);
  n->name[sizeof n->name - 1] = 0;
  n->next = head;
  return n;
}
int main(int argc, char **argv) {
  struct node *list = 0;
  for (int i = 0; i < argc; i++) list = push(list, argv[i]);
  for (struct node *n = list; n; n = n->next) printf("%s\n", n->name);
  return 0;
}
