/* config.c — placeholder until the option table lands (config/config.h). */
int vitd_config_placeholder(void);
int vitd_config_placeholder(void) { return 0; }
