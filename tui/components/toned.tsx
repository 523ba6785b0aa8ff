import { Box, Text } from 'ink';
import type { ReactNode } from 'react';
import type { FittedSpan } from '../fit.js';
import { THEME, type Tone } from '../theme.js';

/** Text in one of the theme's tones: the only place colours reach Ink. */
export function Toned({ tone, bold, children }: { readonly tone: Tone; readonly bold?: boolean; readonly children: ReactNode }) {
  const style = THEME[tone];
  return (
    <Text
      {...(style.color !== undefined ? { color: style.color } : {})}
      dimColor={style.dimColor ?? false}
      bold={bold ?? style.bold ?? false}
    >
      {children}
    </Text>
  );
}

/** A bordered panel whose border shows focus. */
export function Panel({
  title,
  focused,
  width,
  height,
  children,
}: {
  readonly title?: string;
  readonly focused: boolean;
  readonly width: number;
  readonly height: number;
  readonly children: ReactNode;
}) {
  const border = THEME[focused ? 'accent' : 'muted'];
  return (
    <Box
      flexDirection="column"
      borderStyle="round"
      {...(border.color !== undefined ? { borderColor: border.color } : {})}
      borderDimColor={border.dimColor ?? false}
      width={width}
      height={height}
      paddingX={1}
      overflow="hidden"
    >
      {title === undefined ? null : (
        <Line>
          <Toned tone={focused ? 'accent' : 'plain'} bold>
            {title}
          </Toned>
        </Line>
      )}
      {children}
    </Box>
  );
}

/** One terminal line: its spans truncate together at the panel's edge. */
export function Line({ children }: { readonly children: ReactNode }) {
  return <Text wrap="truncate-end">{children}</Text>;
}

/** One line of fitted spans (tui/fit.ts); an empty one stays as a blank line. */
export function Spans({ spans }: { readonly spans: readonly FittedSpan[] }) {
  return (
    <Line>
      {spans.length === 0
        ? ' '
        : spans.map((s, i) => (
            <Toned key={i} tone={s.tone} bold={s.bold}>
              {s.text}
            </Toned>
          ))}
    </Line>
  );
}
