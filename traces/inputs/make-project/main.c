void alpha_print(const char *); void beta_print(const char *); void gamma_print(const char *); void delta_print(const char *);
int main(int argc, char **argv) { for (int i = 1; i < argc; i++) { alpha_print(argv[i]); beta_print(argv[i]); gamma_print(argv[i]); delta_print(argv[i]); } return 0; }
