import { memo } from "react";
import ReactMarkdown, { type Components } from "react-markdown";

// react-markdown builds React elements (no innerHTML): raw HTML in the text is
// not rendered, and unsafe link protocols (javascript:) are dropped by its URL filter.
const components: Components = {
  a: ({ href, children }) => (
    <a href={href} target="_blank" rel="noopener noreferrer">
      {children}
    </a>
  ),
  pre: ({ children }) => <pre className="code-block">{children}</pre>,
  code: ({ className, children }) => {
    const language = /language-([\w-]+)/.exec(className ?? "")?.[1];
    return (
      <code className={className} data-language={language}>
        {children}
      </code>
    );
  },
};

/** Assistant text as Markdown, with fenced code blocks. */
export const Markdown = memo(function Markdown({ text }: { text: string }) {
  return <ReactMarkdown components={components}>{text}</ReactMarkdown>;
});
