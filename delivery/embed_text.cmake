# embed_text.cmake - cmake -DIN=config/x.conf -DOUT=x.c -DNAME=symbol -P embed_text.cmake
# Writes a shipped text file as a C byte array (NUL-terminated) named NAME:
# config/bounce-rules.conf (dlv_rules_builtin_text, delivery/rules.c) and
# config/providers.conf (shp_builtin_text, delivery/shaping_conf.c), the
# built-in defaults sluiced runs with. Run by the build whenever the file
# changes; nothing generated is checked in.
file(READ "${IN}" hex HEX)
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," bytes "${hex}")
string(REGEX REPLACE "(0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,)" "\\1\n"
       bytes "${bytes}")
get_filename_component(src "${IN}" NAME)
file(WRITE "${OUT}.tmp"
     "/* generated from config/${src} by delivery/embed_text.cmake */\n"
     "extern const char ${NAME}[];\n"
     "const char ${NAME}[] = {\n${bytes}0x00};\n")
file(RENAME "${OUT}.tmp" "${OUT}")
